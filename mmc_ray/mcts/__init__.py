"""Pure Monte Carlo Tree Search over reasoning steps (stdlib only) and divergent-pair mining."""
