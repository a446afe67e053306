//! One module per kernel hook, each with its entry points (the program macros) beside
//! the handler they share.
pub mod consume_skb;
pub mod inet_sk_error_report;
pub mod inet_sock_set_state;
pub mod kfree_skb;
pub mod sys_exit_connect;
pub mod tcp_connect;
pub mod tcp_destroy_sock;
pub mod tcp_probe;
pub mod tcp_rcv_state_process;
pub mod tcp_receive_reset;
pub mod tcp_retransmit_skb;
pub mod tcp_retransmit_synack;
pub mod tcp_send_reset;
