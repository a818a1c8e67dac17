# wxscale:param network=infiniband [one of: slingshot|infiniband|ethernet|none] interconnect whose NCCL/libfabric defaults are exported
# Interconnect defaults. Each one is ${VAR:-default}: a value exported before sbatch (or by a site module)
# wins. Apptainer passes the host environment into the container, so NCCL inside sees these.
WXSCALE_NETWORK={{network|q}}
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
case "$WXSCALE_NETWORK" in
  slingshot)
    # HPE Slingshot 11: NCCL talks to the cxi NIC through libfabric and the aws-ofi-nccl plugin, which the
    # site provides (bind it with nccl_plugin_dir). Values follow the NCCL settings published by CSCS for
    # Alps and by Isambard-AI; NCCL_NET makes NCCL fail at start instead of falling back to TCP sockets.
    export NCCL_NET="${NCCL_NET:-AWS Libfabric}"
    export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-hsn}"
    export NCCL_NET_GDR_LEVEL="${NCCL_NET_GDR_LEVEL:-PHB}"
    export NCCL_CROSS_NIC="${NCCL_CROSS_NIC:-1}"
    export FI_PROVIDER="${FI_PROVIDER:-cxi}"
    export FI_CXI_DISABLE_HOST_REGISTER="${FI_CXI_DISABLE_HOST_REGISTER:-1}"
    export FI_MR_CACHE_MONITOR="${FI_MR_CACHE_MONITOR:-userfaultfd}"
    export FI_CXI_DEFAULT_CQ_SIZE="${FI_CXI_DEFAULT_CQ_SIZE:-131072}"
    export FI_CXI_DEFAULT_TX_SIZE="${FI_CXI_DEFAULT_TX_SIZE:-2048}"
    export FI_CXI_RX_MATCH_MODE="${FI_CXI_RX_MATCH_MODE:-hybrid}"
    export FI_CXI_RDZV_PROTO="${FI_CXI_RDZV_PROTO:-alt_read}"
    export FI_CXI_RDZV_THRESHOLD="${FI_CXI_RDZV_THRESHOLD:-0}"
    export FI_CXI_RDZV_GET_MIN="${FI_CXI_RDZV_GET_MIN:-0}"
    export FI_CXI_RDZV_EAGER_SIZE="${FI_CXI_RDZV_EAGER_SIZE:-0}"
    ;;
  infiniband)
    # InfiniBand / RoCE (NCCL's built-in IB transport): use the mlx5 HCAs (a prefix matches them all) and
    # keep the bootstrap sockets off loopback and container bridges.
    export NCCL_IB_HCA="${NCCL_IB_HCA:-mlx5}"
    export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-^lo,docker}"
    export NCCL_NET_GDR_LEVEL="${NCCL_NET_GDR_LEVEL:-PHB}"
    ;;
  ethernet)
    # Plain TCP sockets (no RDMA): slow across nodes, but it works everywhere.
    export NCCL_IB_DISABLE="${NCCL_IB_DISABLE:-1}"
    export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-^lo,docker}"
    ;;
  none)
    ;;
esac
