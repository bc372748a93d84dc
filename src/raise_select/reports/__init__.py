"""The comparison study and its Table 1 layout (tables) and bar plot (plots)."""
