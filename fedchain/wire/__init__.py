"""The bytes between server and clients: frames, the restricted unpickler, message schemas."""
