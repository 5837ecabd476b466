"""Built-in notification channels: email over SMTP and signed webhooks."""
