"""The HTTP listener: webhooks, the admin API, the public endpoints and the status page."""
