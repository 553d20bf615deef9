"""The example's app: customers and their orders, read through cachecow's CachedManager."""
