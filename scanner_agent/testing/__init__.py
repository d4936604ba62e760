"""Real slides made on the spot, a simulated scanner, and the demo built on them."""
