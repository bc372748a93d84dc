"""The experiments layer: run a method at a matched budget, key and store its cell, count its costs."""
