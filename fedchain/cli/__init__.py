"""The command lines: flags in, one call into the federation or the ledger, exit codes out."""
