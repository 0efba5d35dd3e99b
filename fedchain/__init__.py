"""Federated linear regression trained with PyGAD and recorded on a verifiable proof-of-work chain.

The folders are the architecture, and imports point down them:
  cli/         the command lines (server, client, chain tool), thin over what follows
  federation/  the server's and the client's side of a run, over sockets
  ledger/      blocks, their canonical bytes and mining, chain files, verification
  wire/        frames, the restricted unpickler, message schemas
  trust/       Ed25519 keys, TLS 1.3 with a pinned server key, signed logins, admitted clients
  learning/    the linear model, local training (PyGAD), aggregation, data loading, simulation
  checks.py    the rules for names, integers and magnitudes that every edge applies
  settings.py  the run's defaults
  files.py     files made whole or not at all, and synced
"""
