"""Online gateway: HTTP server, devices, fare rules and the tap journal."""
