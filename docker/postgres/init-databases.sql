-- Runs once, when the postgres service initialises an empty data volume
-- (/docker-entrypoint-initdb.d). One server, two databases, each owned by its own role:
--   tributary  pipeline data  (role tributary)
--   airflow    Airflow metadata (role airflow)
-- Passwords come from the container environment (TRIBUTARY_DB_PASSWORD, AIRFLOW_DB_PASSWORD)
-- through psql's \getenv, so no secret is written in this file.
\set ON_ERROR_STOP on

\getenv tributary_password TRIBUTARY_DB_PASSWORD
\getenv airflow_password AIRFLOW_DB_PASSWORD

\if :{?tributary_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'TRIBUTARY_DB_PASSWORD is not set in the postgres service environment'; END $$;
\endif
\if :{?airflow_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'AIRFLOW_DB_PASSWORD is not set in the postgres service environment'; END $$;
\endif

CREATE ROLE tributary LOGIN PASSWORD :'tributary_password';
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';

-- The owner of a PostgreSQL 15 database may create objects in its public schema
-- (public is owned by pg_database_owner), which is all the migrations and Airflow need.
CREATE DATABASE tributary OWNER tributary;
CREATE DATABASE airflow OWNER airflow;
