"""Event streams between departments: sealed to each subscriber node, carried by a broker."""
