"""ModelDeployment: model source → server Deployment, Service, HPA, PDB, monitoring → status."""
