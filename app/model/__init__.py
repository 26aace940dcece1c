"""What a lab is: the lab file (spec), the plan derived from it, the declared state, guest images."""
