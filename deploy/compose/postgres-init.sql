-- One database per service that keeps state (SYSTEM.md: each service its own database).
CREATE DATABASE cairn_auth;
CREATE DATABASE cairn_metadata;
CREATE DATABASE cairn_orchestrator;
