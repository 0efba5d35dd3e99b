"""The same federation on Flower (flwr 1.42): a ServerApp that drives the run's protocol
(federation/protocol.py) over Flower's Grid, and a ClientApp that runs the same client
(federation/client.py) on each SuperNode. The rules, the training and the chain are this
project's; Flower only carries the messages, framed and checked exactly as the socket carries
them. The only package that imports flwr: the base install does not need it."""
