"""shotnet.calibration: array planning, survey and clock calibration, health reports."""
