"""Money: the price table, the cost of one request, and exact amounts in pico-dollars."""
