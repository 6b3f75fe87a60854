"""Reports: tables and figures built from the metrics (the selective-prediction report and its plots)."""
