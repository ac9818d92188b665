"""What every auth feature shares and that is no feature itself: the request context, the
base of the feature services, secrets and password hashing, the emails, request-body types."""
