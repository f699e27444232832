"""Getting school deliveries into the warehouse: what a delivery is and what it does."""
