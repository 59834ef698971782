"""The search API, one router per resource: health, search, items, scenes (`server.create_app`
mounts them)."""
