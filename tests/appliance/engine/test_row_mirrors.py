"""RowMirrors: which pool blocks a KV row still equals, forgotten on every write to either side."""

import numpy as np

from appliance.engine.row_mirrors import RowMirrors


def mirrors_of_two_rows():
    mirrors = RowMirrors(16)
    for position, block in ((0, 5), (16, 6), (32, 7)):
        mirrors.record(0, block, position)
    mirrors.record(1, 5, 0)  # block 5 was copied into row 1 too
    return mirrors


def test_a_write_inside_a_block_forgets_just_the_blocks_it_touches():
    mirrors = mirrors_of_two_rows()
    mirrors.forget_positions(0, 17, 33)  # inside the block at 16, and the first position of the one at 32
    assert mirrors.blocks_of(0) == {0: 5}
    assert mirrors.holds(1, 5, 0)


def test_a_long_write_over_few_blocks_forgets_them_all():
    mirrors = mirrors_of_two_rows()
    mirrors.forget_positions(0, 8, 2048)
    assert mirrors.blocks_of(0) == {} and mirrors.blocks_of(1) == {0: 5}


def test_an_overwritten_pool_block_is_held_by_no_row():
    mirrors = mirrors_of_two_rows()
    mirrors.forget_block(5)
    assert not mirrors.holds(0, 5, 0) and not mirrors.holds(1, 5, 0)
    assert mirrors.blocks_of(0) == {16: 6, 32: 7}
    mirrors.record(1, 5, 0)  # stored anew from row 1
    assert mirrors.holds(1, 5, 0) and not mirrors.holds(0, 5, 0)


def test_a_decode_step_forgets_the_block_of_each_rows_written_position():
    mirrors = mirrors_of_two_rows()
    mirrors.forget_written(0, np.asarray([40, 3]))
    assert mirrors.blocks_of(0) == {0: 5, 16: 6} and mirrors.blocks_of(1) == {}


def test_a_recorded_position_replaces_the_block_it_held():
    mirrors = mirrors_of_two_rows()
    mirrors.record(0, 9, 16)
    assert mirrors.blocks_of(0) == {0: 5, 16: 9, 32: 7}
    mirrors.forget_block(6)  # no longer row 0's: nothing to forget
    assert mirrors.blocks_of(0) == {0: 5, 16: 9, 32: 7}


def test_rows_keep_the_order_they_were_last_written_in_and_a_moved_row_its_sources():
    mirrors = RowMirrors(16)
    for row in (2, 0, 1, 2):
        mirrors.mark_used(row)
    assert sorted(range(4), key=mirrors.last_used) == [3, 0, 1, 2]  # row 3 never written
    mirrors.took_over(3, 0)
    assert mirrors.last_used(3) == mirrors.last_used(0) < mirrors.last_used(1)
    mirrors.clear()
    assert all(mirrors.last_used(row) == 0 for row in range(4))
