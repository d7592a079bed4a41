"""Pure security logic: tokens, allowlists. No I/O and no imports from the rest of Conduit."""
