"""Money: prices, estimates and the spending budget."""
