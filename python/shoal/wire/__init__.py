"""What travels: the payload format (pickle protocol 5 with out-of-band buffers
in the arena, number columns), pickling rules, and the protocol's constants."""
