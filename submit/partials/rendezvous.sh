# wxscale:param master_port=  rendezvous TCP port (empty: 15000 + job id mod 20000, as wxscale.training.distributed derives it)
# torch.distributed env:// rendezvous: rank 0 runs on the first host of the allocation. The trainer reads
# SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID itself (rank, world size, device index).
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"
MASTER_PORT={{master_port|q}}
if [[ -z "$MASTER_PORT" ]]; then
  MASTER_PORT=$((15000 + SLURM_JOB_ID % 20000))
fi
export MASTER_ADDR MASTER_PORT
# One BLAS/OpenMP thread pool per rank, sized to the rank's CPUs rather than the whole node.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
echo "wxscale: job ${SLURM_JOB_ID}: ${SLURM_NTASKS} ranks on ${SLURM_JOB_NUM_NODES} node(s)," \
     "rendezvous ${MASTER_ADDR}:${MASTER_PORT}"
