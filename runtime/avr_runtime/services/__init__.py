"""Services the calls share: metrics, cache, limiter, provider pools and clients, webhooks."""
