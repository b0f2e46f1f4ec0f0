"""Running on a Ray cluster: a local head for `ray job submit` (tests, laptops), the fake
multi-node autoscaler (autoscaling proven on one machine), and the node timeline the
pipeline records for its report."""
