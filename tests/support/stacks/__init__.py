"""Running setups of one or more apps that tests talk to."""
