"""The chain: blocks, their canonical bytes and mining, chain files, verification, reports."""
