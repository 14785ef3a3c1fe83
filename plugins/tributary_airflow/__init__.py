"""Tributary's Airflow side: the streaming-job hook, operators, deploy backends and UI pages.

Airflow puts `plugins/` on sys.path, so DAGs import this package as `tributary_airflow`.
"""
