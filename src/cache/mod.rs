//! Chunk cache: verified uncompressed layer bytes (memory LRU -> disk -> fetch).
