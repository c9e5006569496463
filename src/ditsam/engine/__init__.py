"""ditsam."""
