"""MedGen: restore and generate volumes in 3D Slicer with the monai_medgen MONAI Label app.

A scripted module (Slicer 5.x): choose the server and a model, set its options (sampler, steps, seed, number of
samples, factor, class, guidance, ...), pick the input volume (and for inpainting the segment that marks what is
missing), press Apply.  The input is uploaded to ``/infer/<model>``; the result is loaded as a scalar volume named
``"<input> (synthetic, <task>)"`` and, with more than one sample, the standard deviation map as
``"<input> (synthetic, <task>, uncertainty)"``.  "Generate new volume" asks the ``generate`` active-learning
strategy for a new synthetic volume (what MONAI Label's "Next Sample" does) and loads it.

Progress: MONAI Label answers one ``/infer`` request only when the whole volume is done and reports no progress for
it, so while the server works the module shows a busy bar (no percentage) and a line naming the model, the input
and its size, with the seconds elapsed; Slicer stays responsive (the call runs in a thread).

Layout (a Slicer scripted-module extension): ``MedGen.py`` (this file, the only ``.py`` at the top, since Slicer
loads every one there as a module), ``MedGenLib/`` (the Slicer-free client and helpers, tested without Slicer),
``Resources/UI/MedGen.ui``, ``Resources/Icons/MedGen.png``, ``Testing/``, ``CMakeLists.txt``.  Install: Edit >
Application Settings > Modules > Additional module paths: add this folder (``scripts/slicer/MedGen``), restart
Slicer; the module is under "MONAI".  Or build the extension in ``scripts/slicer`` against a Slicer build tree.
"""

import json
import os
import sys
import tempfile
import time

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # Slicer puts a module's folder on sys.path; this keeps MedGenLib importable regardless
    sys.path.insert(0, _HERE)
from MedGenLib import background, medgen_client  # noqa: E402  (plain Python, no Slicer)

SETTINGS_SERVER = "MedGen/server"


class MedGen(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "MedGen"
        parent.categories = ["MONAI"]
        parent.dependencies = []
        parent.contributors = ["monai_medgen contributors"]
        parent.helpText = (
            "Restore (super-resolution, denoising, inpainting) or generate volumes with the diffusion models of the "
            "monai_medgen MONAI Label app. Results are synthetic images: not for diagnosis."
        )
        parent.acknowledgementText = "Uses MONAI and MONAI Label (Apache-2.0)."


class MedGenLogic(ScriptedLoadableModuleLogic):
    """Upload, call, load: everything the widget does that is not layout."""

    def __init__(self, server=medgen_client.DEFAULT_SERVER):
        ScriptedLoadableModuleLogic.__init__(self)
        self.client = medgen_client.MedGenClient(server)
        self.tmpdir = tempfile.mkdtemp(prefix="medgen_slicer_")
        self.busy = None  # callable(text) while a server call runs (the widget's busy bar and status line)

    def models(self):
        return self.client.models()

    def _write_volume(self, node, path):
        """Write a volume node to ``path`` without changing where the scene thinks it is stored."""
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(path)
        storage.SetUseCompression(1)
        if not storage.WriteData(node):
            raise RuntimeError(f"could not write {node.GetName()} to {path}")
        return path

    def write_mask(self, segmentation_node, segment_id, reference_node, path):
        """The segment as a 0/1 labelmap on the reference volume's grid (1 = missing), written to ``path``."""
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "MedGen mask")
        try:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, reference_node
            )
            return self._write_volume(labelmap, path)
        finally:
            slicer.mrmlScene.RemoveNode(labelmap)

    def run_in_background(self, function, label, detail=""):
        """Run ``function()`` in a thread, keeping Slicer responsive, while :attr:`busy` (a callable taking the
        busy text, or None) is told what runs and for how long; returns the function's result or raises its
        exception.  The server reports no progress for a single request, so this is a busy indicator, not a
        percentage."""
        call = background.BackgroundCall(function)
        while not call.done:
            if self.busy is not None:
                self.busy(background.busy_text(label, call.elapsed, detail))
            slicer.app.processEvents()
            call.wait(0.05)
        return call.result()

    def load_result(self, result, input_name):
        """Load the result (and its uncertainty) volumes, named after the input and the task; returns the nodes."""
        stem = f"medgen_{int(time.time() * 1000)}"
        image_path, std_path = result.save(self.tmpdir, stem)
        task = result.task
        node = slicer.util.loadVolume(
            image_path, properties={"name": medgen_client.result_volume_name(input_name, task)}
        )
        node.SetAttribute("MedGen.synthetic", "true")
        node.SetAttribute("MedGen.provenance", json.dumps(result.medgen.get("provenance", {})))
        std_node = None
        if std_path:
            std_node = slicer.util.loadVolume(
                std_path, properties={"name": medgen_client.uncertainty_volume_name(input_name, task), "show": False}
            )
            std_node.SetAttribute("MedGen.synthetic", "true")
        return node, std_node

    def run(self, model, volume_node, params, segmentation_node=None, segment_id=None):
        image_path = self._write_volume(volume_node, os.path.join(self.tmpdir, "input.nii.gz"))
        mask_path = None
        if model.needs_mask:
            if segmentation_node is None or not segment_id:
                raise ValueError(f"{model.name} inpaints: select the segment that marks the region to fill in.")
            mask_path = self.write_mask(
                segmentation_node, segment_id, volume_node, os.path.join(self.tmpdir, "mask.nii.gz")
            )
        dims = volume_node.GetImageData().GetDimensions() if volume_node.GetImageData() else None
        result = self.run_in_background(
            lambda: self.client.infer(model.name, image_path, params, mask_path),
            f"{model.name} on {volume_node.GetName()}",
            background.describe_volume(dims),
        )
        return self.load_result(result, volume_node.GetName())

    def generate_next(self, params):
        entry = self.run_in_background(lambda: self.client.next_sample("generate", params), "Generating a new volume")
        if not entry or not entry.get("id"):
            raise ValueError("the server has no 'generate' strategy (no generative bundle is served).")
        path = os.path.join(self.tmpdir, f"{entry['id']}.nii.gz")
        self.client.download_image(entry["id"], path)
        node = slicer.util.loadVolume(
            path, properties={"name": medgen_client.result_volume_name(entry["id"], "generate")}
        )
        node.SetAttribute("MedGen.synthetic", "true")
        return node


class MedGenWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = None
        self.models = {}
        self.option_widgets = {}

        ui_widget = slicer.util.loadUI(self.resourcePath("UI/MedGen.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.ui.serverLineEdit.text = qt.QSettings().value(SETTINGS_SERVER, medgen_client.DEFAULT_SERVER)
        self.options_form = qt.QFormLayout(self.ui.optionsWidget)
        self.ui.progressBar.hide()

        self.ui.connectButton.connect("clicked(bool)", self.on_connect)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.on_model_changed)
        self.ui.applyButton.connect("clicked(bool)", self.on_apply)
        self.ui.generateButton.connect("clicked(bool)", self.on_generate)
        self.update_mask_visibility()

    # ---- helpers -----------------------------------------------------------------------------
    def current_model(self):
        return self.models.get(self.ui.modelComboBox.currentText)

    def show_busy(self, text):
        """The busy bar (no percentage: the server reports none) and the status line, while a call runs."""
        self.ui.progressBar.show()
        self.ui.statusLabel.text = text

    def set_busy(self, busy):
        """Disable the buttons during a server call and show the busy bar; restore them afterwards."""
        for button in (self.ui.connectButton, self.ui.applyButton, self.ui.generateButton):
            button.enabled = not busy and (button is self.ui.connectButton or self._button_allowed(button))
        self.ui.progressBar.setVisible(busy)
        if self.logic is not None:
            self.logic.busy = self.show_busy if busy else None

    def _button_allowed(self, button):
        if button is self.ui.applyButton:
            return self.current_model() is not None
        return any(m.generative for m in self.models.values())

    def update_mask_visibility(self):
        model = self.current_model()
        show = bool(model and model.needs_mask)
        self.ui.maskSegmentSelector.setVisible(show)
        self.ui.maskLabel.setVisible(show)

    def clear_options(self):
        while self.options_form.rowCount() > 0:
            self.options_form.removeRow(0)
        self.option_widgets = {}

    def add_option(self, option):
        if option.kind == "choice":
            widget = qt.QComboBox()
            for choice in option.choices:
                widget.addItem(str(choice))
        elif option.kind == "int":
            widget = qt.QSpinBox()
            widget.minimum = int(option.minimum if option.minimum is not None else -(2**31) + 1)
            widget.maximum = int(option.maximum if option.maximum is not None else 2**31 - 1)
            widget.value = int(option.default)
        elif option.kind == "float":
            widget = qt.QDoubleSpinBox()
            widget.decimals = 3
            widget.minimum = float(option.minimum if option.minimum is not None else -1e9)
            widget.maximum = float(option.maximum if option.maximum is not None else 1e9)
            widget.value = float(option.default)
        elif option.kind == "bool":
            widget = qt.QCheckBox()
            widget.checked = bool(option.default)
        else:
            widget = qt.QLineEdit(str(option.default))
        self.options_form.addRow(f"{option.name}:", widget)
        self.option_widgets[option.name] = (option, widget)

    def option_values(self):
        values = {}
        for name, (option, widget) in self.option_widgets.items():
            if option.kind == "choice":
                values[name] = option.choices[widget.currentIndex]
            elif option.kind in ("int", "float"):
                values[name] = widget.value
            elif option.kind == "bool":
                values[name] = widget.checked
            else:
                values[name] = widget.text
        return values

    # ---- slots -------------------------------------------------------------------------------
    def on_connect(self):
        server = self.ui.serverLineEdit.text.strip()
        try:
            self.logic = MedGenLogic(server)
            slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
            try:
                self.models = self.logic.models()
            finally:
                slicer.app.restoreOverrideCursor()
        except (ValueError, medgen_client.ServerError) as e:
            self.models = {}
            self.ui.modelComboBox.clear()
            self.ui.statusLabel.text = "Not connected."
            slicer.util.errorDisplay(f"Could not connect to {server}: {e}")
            return
        qt.QSettings().setValue(SETTINGS_SERVER, server)
        self.ui.modelComboBox.clear()
        for name in self.models:
            self.ui.modelComboBox.addItem(name)
        if not self.models:
            self.ui.statusLabel.text = f"{server} serves no monai_medgen model."
        else:
            self.ui.statusLabel.text = f"Connected to {server}: {len(self.models)} model(s)."
        self.ui.generateButton.enabled = any(m.generative for m in self.models.values())
        self.on_model_changed()

    def on_model_changed(self, index=None):
        self.clear_options()
        model = self.current_model()
        self.ui.applyButton.enabled = model is not None
        self.ui.descriptionLabel.text = f"{model.description} [task: {model.task}]" if model else ""
        if model:
            for option in model.options:
                self.add_option(option)
        self.update_mask_visibility()

    def on_apply(self):
        model = self.current_model()
        volume = self.ui.inputVolumeSelector.currentNode()
        if model is None or self.logic is None:
            slicer.util.errorDisplay("Connect to a server and choose a model first.")
            return
        if volume is None:
            what = "the reference volume (its field of view)" if model.generative else "the volume to process"
            slicer.util.errorDisplay(f"Select an input volume: {what}.")
            return
        try:
            params = medgen_client.request_params(model, self.option_values())
            self.set_busy(True)
            try:
                node, std_node = self.logic.run(
                    model,
                    volume,
                    params,
                    self.ui.maskSegmentSelector.currentNode(),
                    self.ui.maskSegmentSelector.currentSegmentID(),
                )
            finally:
                self.set_busy(False)
        except medgen_client.ServerError as e:
            self.ui.statusLabel.text = f"{model.name} failed."
            slicer.util.errorDisplay(f"{model.name}: {e}")
            return
        except ValueError as e:
            self.ui.statusLabel.text = f"{model.name} failed."
            slicer.util.errorDisplay(str(e))
            return
        slicer.util.setSliceViewerLayers(background=node, fit=True)
        self.ui.statusLabel.text = f"Loaded '{node.GetName()}'" + (f" and '{std_node.GetName()}'." if std_node else ".")

    def on_generate(self):
        if self.logic is None:
            return
        model = self.current_model()
        try:
            params = medgen_client.request_params(model, self.option_values()) if model and model.generative else {}
            self.set_busy(True)
            try:
                node = self.logic.generate_next(params)
            finally:
                self.set_busy(False)
        except (medgen_client.ServerError, ValueError) as e:
            self.ui.statusLabel.text = "Generate failed."
            slicer.util.errorDisplay(f"Generate: {e}")
            return
        slicer.util.setSliceViewerLayers(background=node, fit=True)
        self.ui.statusLabel.text = f"Loaded '{node.GetName()}' (synthetic)."


class MedGenTest(ScriptedLoadableModuleTest):
    """Slicer self-test (no server): the client's names and option parsing on a recorded ``/info/`` entry, a
    background call, and the widget built from its ``.ui``."""

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_client()
        self.test_background_call()
        self.test_widget()

    def test_client(self):
        info = {
            "models": {
                "m": {
                    "description": "d",
                    "dimension": 2,
                    "config": {"steps": 20, "sampler": ["dpm++", "ddim"]},
                    "medgen": {"task": "denoise", "limits": {"steps": [1, 100]}},
                }
            }
        }
        model = medgen_client.parse_info(info)["m"]
        assert medgen_client.request_params(model, {"steps": 5, "sampler": "ddim"}) == {"steps": 5, "sampler": "ddim"}
        assert medgen_client.result_volume_name("MRHead", "denoise") == "MRHead (synthetic, denoise)"
        self.delayDisplay("MedGen client test passed")

    def test_background_call(self):
        call = background.BackgroundCall(lambda: 6 * 7)
        assert call.wait(10) and call.result() == 42
        self.delayDisplay("MedGen background call test passed")

    def test_widget(self):
        widget = slicer.modules.medgen.widgetRepresentation().self()
        for name in (
            "serverLineEdit",
            "modelComboBox",
            "inputVolumeSelector",
            "maskSegmentSelector",
            "optionsWidget",
            "applyButton",
            "generateButton",
            "progressBar",
            "statusLabel",
        ):
            assert hasattr(widget.ui, name), f"{name} missing from Resources/UI/MedGen.ui"
        self.delayDisplay("MedGen widget test passed")
