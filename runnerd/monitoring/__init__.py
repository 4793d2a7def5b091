"""Monitoring: monitor ticks and alert mails, the heartbeat and systemd's watchdog, metrics, ping
limits. Monitor states themselves live in queue/taskstatus.py, written where runs finish."""
