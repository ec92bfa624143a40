"""CL metrics (docs/metrics/index.md) on hand-computed matrices, and the acc.csv schema."""

import json

import numpy as np
import pytest

from clrepro.errors import UserError
from clrepro.metrics.cl import (average_accuracy_series, bwt_series, compute_cl_metrics, forgetting_ratio,
                                forgetting_ratio_independent_series, fwt_series)
from clrepro.metrics.io import read_acc_matrix, read_joint_row, write_acc_csv, write_joint_csv

nan = np.nan
approx = pytest.approx

# acc[N-1, t-1] = a_{t,N}
ACC = np.array([[0.9, nan, nan],
                [0.7, 0.8, nan],
                [0.6, 0.5, 0.9]])
INDEP = np.array([[0.95, nan, nan],   # only the diagonal a^I_{t,t} = 0.95, 0.85, 0.8 is used
                  [0.90, 0.85, nan],
                  [0.90, 0.80, 0.80]])
JOINT = np.array([0.95, 0.9, 1.0])
# The last row misses task 2, so a^R_{2,3} falls back to the diagonal a^R_{2,2} = 0.3.
RANDOM = np.array([[0.1, nan, nan],
                   [0.1, 0.3, nan],
                   [0.1, nan, 0.2]])


def test_average_accuracy():
    # AA_1 = 0.9; AA_2 = (0.7 + 0.8)/2; AA_3 = (0.6 + 0.5 + 0.9)/3 = 2/3
    assert average_accuracy_series(ACC) == approx([0.9, 0.75, 0.6666666667])


def test_bwt_from_n2():
    # BWT_2 = 0.7 - 0.9; BWT_3 = ((0.6 - 0.9) + (0.5 - 0.8))/2
    assert bwt_series(ACC) == approx([-0.2, -0.3])


def test_fwt_uses_independent_diagonal():
    # FWT_2 = 0.8 - 0.85; FWT_3 = ((0.8 - 0.85) + (0.9 - 0.8))/2
    assert fwt_series(ACC, INDEP) == approx([-0.05, 0.025])


def test_forgetting_ratio_joint_with_random_fallback():
    # t=1: (0.6-0.1)/(0.95-0.1) = 10/17; t=2: (0.5-0.3)/(0.9-0.3) = 1/3; t=3: (0.9-0.2)/(1.0-0.2) = 7/8
    # FR = (10/17 + 1/3 + 7/8)/3 - 1 = 1.7965686/3 - 1
    assert forgetting_ratio(ACC, JOINT, RANDOM) == approx(-0.4011437908)


def test_forgetting_ratio_independent_series():
    # N=1: 0.8/0.85 - 1
    # N=2: (0.6/0.85 + 0.5/0.55)/2 - 1 = (0.7058824 + 0.9090909)/2 - 1
    # N=3: (0.5/0.85 + 0.2/0.55 + 0.7/0.6)/3 - 1 = (0.5882353 + 0.3636364 + 1.1666667)/3 - 1
    assert forgetting_ratio_independent_series(ACC, INDEP, RANDOM) == approx(
        [-0.0588235294, -0.1925133690, -0.2938205585])


def test_random_evaluated_only_at_t():
    # the notebook case: random run tested once, at T; a^R_{t,N} = a^R_{t,T} (the Random model never changes)
    last_only = np.array([[nan, nan, nan], [nan, nan, nan], [0.1, 0.3, 0.2]])
    assert forgetting_ratio_independent_series(ACC, INDEP, last_only) == approx(
        [-0.0588235294, -0.1925133690, -0.2938205585])


def test_forgetting_ratio_independent_clamped_at_zero():
    # unclamped: (0.9 - 0.1)/(0.8 - 0.1) - 1 = +0.142857 -> min(0, .) = 0
    assert forgetting_ratio_independent_series([[0.9]], [[0.8]], [[0.1]]) == approx([0.0])


def test_compute_all_metrics_json_ready():
    m = compute_cl_metrics(ACC, independent=INDEP, joint=JOINT, random=RANDOM)
    assert m["AA"] == approx(0.6666666667)
    assert m["BWT"] == approx(-0.3)
    assert m["FWT"] == approx(0.025)
    assert m["FR"] == approx(-0.4011437908)
    assert m["series"]["BWT"] == approx([-0.2, -0.3])
    assert m["series"]["FR_I"][-1] == approx(-0.2938205585)
    assert all(type(v) is float for v in m["series"]["AA"])
    json.dumps(m, allow_nan=False)
    m_ind = compute_cl_metrics(ACC, independent=INDEP, random=RANDOM, fr_variant="independent")
    assert m_ind["FR"] == approx(-0.2938205585)


def test_single_task():
    m = compute_cl_metrics([[0.9]], independent=[[0.8]], joint=[0.95], random=[[0.1]])
    assert m["AA"] == approx(0.9)
    assert m["BWT"] is None and m["FWT"] is None
    assert m["series"]["BWT"] == [] and m["series"]["FWT"] == []
    assert m["FR"] == approx(0.8 / 0.85 - 1)   # (0.9-0.1)/(0.95-0.1) - 1 = -0.0588235
    assert m["FR"] == approx(-0.0588235294)


def test_missing_references_give_none():
    m = compute_cl_metrics(ACC)
    assert m["AA"] == approx(0.6666666667) and m["BWT"] == approx(-0.3)
    assert m["FWT"] is None and m["FR"] is None
    assert "FWT" not in m["series"] and "FR_I" not in m["series"]
    assert compute_cl_metrics(ACC, joint=JOINT)["FR"] is None            # random missing
    assert compute_cl_metrics(ACC, joint=JOINT, random=RANDOM, fr_variant="independent")["FR"] is None


def test_zero_denominator_gives_none():
    joint = np.array([0.1, 0.9, 1.0])   # a^J_1 = a^R_1 = 0.1
    assert compute_cl_metrics(ACC, joint=joint, random=RANDOM)["FR"] is None
    same = np.full((3, 3), 0.1)
    assert compute_cl_metrics(ACC, independent=same, random=same)["series"]["FR_I"] == [None] * 3


def test_nan_entry_becomes_none():
    acc = ACC.copy()
    acc[2, 0] = nan   # task 1 not evaluated after task 3
    m = compute_cl_metrics(acc)
    assert m["BWT"] is None and m["series"]["BWT"][0] == approx(-0.2)
    assert m["AA"] == approx(0.7)   # (0.5 + 0.9)/2, over the non-NaN entries


def test_bad_input_raises():
    with pytest.raises(UserError):
        compute_cl_metrics(ACC, independent=np.zeros((2, 2)))
    with pytest.raises(UserError):
        forgetting_ratio(ACC, [0.9, 0.9], RANDOM)
    with pytest.raises(UserError, match="fr_variant"):
        compute_cl_metrics(ACC, fr_variant="bogus")


# ---- acc.csv schema ---------------------------------------------------------------------------------

def test_csv_round_trip_with_empty_cells(tmp_path):
    path = tmp_path / "results" / "acc.csv"
    write_acc_csv(path, ACC)
    lines = path.read_text().splitlines()
    assert lines[0] == "after_training_task,average_accuracy,test_on_task_1,test_on_task_2,test_on_task_3"
    assert lines[1] == "1,0.9,0.9,,"
    np.testing.assert_array_equal(read_acc_matrix(path), ACC)


def test_clarena_rows_that_end_at_the_last_task_seen(tmp_path):
    """CLArena writes row N only up to test_on_task_N; it reads as the padded form, and a row that stops
    before a task it was tested on is still refused."""
    path = tmp_path / "acc.csv"
    write_acc_csv(path, ACC)
    short = tmp_path / "clarena_acc.csv"
    short.write_text("\n".join(line.rstrip(",") for line in path.read_text().splitlines()) + "\n")
    assert short.read_text().splitlines()[1] == "1,0.9,0.9"
    np.testing.assert_array_equal(read_acc_matrix(short), read_acc_matrix(path))
    cut = tmp_path / "cut.csv"
    lines = short.read_text().splitlines()
    cut.write_text("\n".join([*lines[:-1], lines[-1].rsplit(",", 1)[0]]))  # row 3 without test_on_task_3
    with pytest.raises(UserError, match="has no value for test_on_task_3"):
        read_acc_matrix(cut)


def test_csv_subset_rows(tmp_path):
    path = tmp_path / "acc.csv"
    write_acc_csv(path, ACC, task_ids=[1, 3])
    back = read_acc_matrix(path)
    assert np.isnan(back[1]).all()
    np.testing.assert_array_equal(back[[0, 2]], ACC[[0, 2]])


def test_joint_round_trip(tmp_path):
    path = tmp_path / "acc.csv"
    write_joint_csv(path, JOINT)
    assert path.read_text().splitlines()[0] == "average_accuracy,test_on_task_1,test_on_task_2,test_on_task_3"
    np.testing.assert_array_equal(read_joint_row(path), JOINT)


def test_read_reference_format(tmp_path):
    path = tmp_path / "acc.csv"
    path.write_text("after_training_task,average_accuracy,test_on_task_1,test_on_task_2\n"
                    "1,0.9,0.9,\n"
                    "2,0.8,0.7,0.9\n")
    np.testing.assert_array_equal(read_acc_matrix(path), [[0.9, nan], [0.7, 0.9]])
    joint = tmp_path / "joint.csv"
    joint.write_text("average_accuracy,test_on_task_1,test_on_task_2\n0.925,0.95,0.9\n")
    np.testing.assert_array_equal(read_joint_row(joint), [0.95, 0.9])


def test_read_rows_out_of_order_with_index_column(tmp_path):
    # a notebook-written file (pandas index column), rows out of order, row 2 missing
    path = tmp_path / "acc.csv"
    path.write_text(",after_training_task,average_accuracy,test_on_task_1,test_on_task_2,test_on_task_3\n"
                    "0,3,0.5,0.4,0.5,0.6\n"
                    "1,1,0.9,0.9,,\n")
    acc = read_acc_matrix(path)
    np.testing.assert_array_equal(acc[0], [0.9, nan, nan])
    assert np.isnan(acc[1]).all()
    np.testing.assert_array_equal(acc[2], [0.4, 0.5, 0.6])


@pytest.mark.parametrize("text, message", [
    (None, "file not found"),
    ("", "empty"),
    ("average_accuracy,test_on_task_1\n0.9,0.9\n", "missing column after_training_task"),
    ("after_training_task,average_accuracy\n1,0.9\n", "test_on_task_1"),
    ("after_training_task,average_accuracy,test_on_task_1\n1,0.9,abc\n", "non-numeric value 'abc'"),
    ("after_training_task,average_accuracy,test_on_task_1\n1,90,90\n", "outside"),
    ("after_training_task,average_accuracy,test_on_task_1\n1,0.9,0.9\n1,0.8,0.8\n", "repeats"),
])
def test_bad_acc_file(tmp_path, text, message):
    path = tmp_path / "acc.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError, match=message) as err:
        read_acc_matrix(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_bad_joint_file(tmp_path):
    path = tmp_path / "acc.csv"
    path.write_text("average_accuracy,test_on_task_1\n0.9,0.9\n0.8,0.8\n")
    with pytest.raises(UserError, match="exactly one data row"):
        read_joint_row(path)
