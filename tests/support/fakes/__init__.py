"""Stand-ins for what is outside this machine, each speaking its real wire format."""
