"""The calibration pass and the scan: one forward pass over calibration windows reduces hidden
states to statistics (`capture`), scores turn them into per-block and per-span redundancy
(`scores`), `selection` picks blocks or spans, `report` renders a scan, and `linear_error`
measures how well one linear map replaces each span."""
