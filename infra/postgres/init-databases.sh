#!/bin/sh
# First start of the PostgreSQL container: one database for MLflow (created from POSTGRES_DB) and one for Prefect.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c "CREATE DATABASE prefect OWNER \"$POSTGRES_USER\";"
