"""Who is who, and a private channel between them: Ed25519 keys, TLS 1.3 with a pinned server
key, the signed login, the server's list of admitted clients, and a client's known servers.
"""
