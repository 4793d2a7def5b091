"""Monitoring: monitor states and alerts, cron schedules, heartbeat, metrics, ping limits."""
