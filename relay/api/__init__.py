"""The admin API: app factory, middleware and routes by resource."""
