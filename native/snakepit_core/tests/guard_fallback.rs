//! Without the `snakepit_guard` program (never set in this test binary), a
//! guard guards from its forked copy of the VM, with the same effect.

mod common;

#[tokio::test]
async fn releasing_the_guard_kills_the_whole_group_grandchildren_included() {
    let (child, grandchild) = common::spawn_with_grandchild();
    let guard = child.guard.expect("guarded by default");
    common::assert_release_kills_group(child.pidfd, guard, grandchild).await;
}
