"""The REST API: routes, auth and the request/response schemas."""
