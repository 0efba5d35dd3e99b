"""The parts of the package and what each may import: the architecture test holds the code to
it, the docs test the README's picture of it."""

# What each part of the package may import from the package, besides itself.
ALLOWED = {
    "checks": set(),
    "settings": set(),
    "files": set(),
    "learning": {"checks", "settings", "files"},  # files: a private client's release, kept whole
    "wire": {"checks"},  # the protocol holds no command-line defaults
    "trust": {
        "checks",
        "settings",
        "files",
    },  # keys, TLS and logins know nothing of models or chains
    "ledger": {"checks", "files", "learning", "trust"},
    "federation": {"checks", "settings", "learning", "ledger", "wire", "trust"},
    # A run's result for people and notebooks: read off a verified chain, never off the network.
    "results": {"checks", "settings", "learning", "ledger"},
    "cli": {"checks", "settings", "learning", "ledger", "wire", "trust", "federation", "results"},
    # The same federation on Flower: an entry point beside the command line, using its parts.
    "flower": {"checks", "settings", "learning", "ledger", "wire", "trust", "federation", "cli"},
}
