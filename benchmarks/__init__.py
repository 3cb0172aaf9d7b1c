"""Measuring tools above the library: the speed benchmark (`bench`), the GPU lease's campaign
(`campaign`, with its `preflight`), the gap between trials (`trial_gap`) and the augmentation
timing (`augment_speed`), and whether ASHA's rungs rank configurations as their ends do
(`rungs`). Nothing in models/, training/, search_spaces/ or tune/ imports them."""
