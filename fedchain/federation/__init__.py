"""The two sides of a federated run over sockets: the server and a client."""
