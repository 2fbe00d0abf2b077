"""Message stores: the interface and its backends."""
