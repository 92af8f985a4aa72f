#!/bin/sh
# First start of the PostgreSQL container: one database for MLflow (created from POSTGRES_DB), one for the users and
# permissions of MLflow's basic-auth app and one for Prefect.
set -eu
for database in mlflow_auth prefect; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE $database OWNER \"$POSTGRES_USER\";"
done
