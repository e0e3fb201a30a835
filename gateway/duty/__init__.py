"""Duty: who is on duty when, and how long a team has to acknowledge. Pure: no I/O, no config.

Takes plain values (office hours, bank holidays, shifts, overrides, deadline rules) and instants.
Gives: `schedule` (open or closed, working time), `rota` (who is on duty, hand-overs),
`deadline_rules` (clock time, working time, end of next working day).

May import: gateway.core.
"""
