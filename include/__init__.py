"""tc-sentinel's pure-Python core: clients, transforms and mappings; never imports Airflow."""
