package org.apache.beam.runners.jobsubmission;

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.net.URISyntaxException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.Enumeration;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.jar.Attributes;
import java.util.jar.JarEntry;
import java.util.jar.JarFile;
import java.util.jar.JarOutputStream;
import java.util.jar.Manifest;
import org.apache.beam.model.jobmanagement.v1.JobApi;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.runners.fnexecution.artifact.ArtifactRetrievalService;
import org.apache.beam.runners.fnexecution.provisioning.JobInfo;
import org.apache.beam.sdk.io.ClassLoaderFileSystem;
import org.apache.beam.sdk.metrics.MetricResults;
import org.apache.beam.sdk.options.PortablePipelineOptions;
import org.apache.beam.sdk.util.construction.PipelineOptionsTranslation;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.MessageOrBuilder;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.util.JsonFormat;
import org.joda.time.Duration;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A {@link PortablePipelineRunner} that does not run the pipeline: it writes a runnable jar (at
 * {@code --output_executable_path}) holding the classes of the jar that contains {@code
 * mainClass}, the pipeline, its options and its artifacts (layout: {@link
 * PortablePipelineJarUtils}). {@code java -jar} on it later runs {@code mainClass}'s main, which
 * reads the pipeline back from the classpath.
 */
public class PortablePipelineJarCreator implements PortablePipelineRunner {
  private static final Logger LOG = LoggerFactory.getLogger(PortablePipelineJarCreator.class);

  private final Class<?> mainClass;

  public PortablePipelineJarCreator(Class<?> mainClass) {
    this.mainClass = mainClass;
  }

  @Override
  public PortablePipelineResult run(RunnerApi.Pipeline pipeline, JobInfo jobInfo)
      throws Exception {
    PortablePipelineOptions options =
        PipelineOptionsTranslation.fromProto(jobInfo.pipelineOptions())
            .as(PortablePipelineOptions.class);
    String outputPath = options.getOutputExecutablePath();
    if (outputPath == null || outputPath.isEmpty()) {
      throw new IllegalArgumentException("--output_executable_path is not set.");
    }
    // The written jar is run as it is, not asked to write itself again.
    options.setOutputExecutablePath(null);
    File output = new File(outputPath);
    String jobName = jobInfo.jobName();
    LOG.info("Writing job {} as the runnable jar {}", jobName, output.getAbsolutePath());
    File classesJar = sourceJar(mainClass);
    try (JarFile classes = new JarFile(classesJar);
        JarOutputStream jar =
            new JarOutputStream(new FileOutputStream(output), manifest(mainClass))) {
      copyClasses(classes, jar);
      writeText(
          jar, PortablePipelineJarUtils.MANIFEST, PortablePipelineJarUtils.manifestJson(jobName));
      writeJson(
          jar,
          PortablePipelineJarUtils.optionsPath(jobName),
          PipelineOptionsTranslation.toProto(options));
      writeJson(
          jar,
          PortablePipelineJarUtils.pipelinePath(jobName),
          embedArtifacts(pipeline, jobName, jar));
    } catch (Exception e) {
      Files.deleteIfExists(output.toPath());
      throw e;
    }
    LOG.info("Wrote {}", output.getAbsolutePath());
    return new JarWrittenResult();
  }

  /** The jar file that holds {@code mainClass}. */
  static File sourceJar(Class<?> mainClass) throws IOException {
    File location;
    try {
      location = new File(mainClass.getProtectionDomain().getCodeSource().getLocation().toURI());
    } catch (URISyntaxException | NullPointerException e) {
      throw new IOException("Cannot locate the classes of " + mainClass.getName(), e);
    }
    if (!location.isFile()) {
      throw new IOException(
          mainClass.getName() + " is not loaded from a jar (" + location + "); cannot copy it.");
    }
    return location;
  }

  /** A manifest with {@code mainClass} as Main-Class when it has {@code static void main}. */
  static Manifest manifest(Class<?> mainClass) {
    Manifest manifest = new Manifest();
    Attributes attributes = manifest.getMainAttributes();
    attributes.put(Attributes.Name.MANIFEST_VERSION, "1.0");
    try {
      Method main = mainClass.getMethod("main", String[].class);
      if (Modifier.isStatic(main.getModifiers()) && main.getReturnType() == void.class) {
        attributes.put(Attributes.Name.MAIN_CLASS, mainClass.getName());
      }
    } catch (NoSuchMethodException e) {
      LOG.warn("{} has no main method; the jar gets no Main-Class.", mainClass.getName());
    }
    return manifest;
  }

  /** Copies every entry but the manifest, signatures and an earlier embedded pipeline. */
  private static void copyClasses(JarFile classes, JarOutputStream jar) throws IOException {
    Set<String> written = new HashSet<>();
    Enumeration<JarEntry> entries = classes.entries();
    while (entries.hasMoreElements()) {
      JarEntry entry = entries.nextElement();
      String name = entry.getName();
      if (skipped(name) || !written.add(name)) {
        continue;
      }
      jar.putNextEntry(new JarEntry(name));
      try (InputStream in = classes.getInputStream(entry)) {
        in.transferTo(jar);
      }
      jar.closeEntry();
    }
  }

  static boolean skipped(String name) {
    String upper = name.toUpperCase();
    return upper.equals(JarFile.MANIFEST_NAME)
        || name.startsWith(PortablePipelineJarUtils.ROOT + "/")
        || (upper.startsWith("META-INF/")
            && (upper.endsWith(".SF") || upper.endsWith(".DSA") || upper.endsWith(".RSA")));
  }

  /** Writes every environment's artifacts into the jar and points the pipeline at them. */
  private static RunnerApi.Pipeline embedArtifacts(
      RunnerApi.Pipeline pipeline, String jobName, JarOutputStream jar) throws IOException {
    RunnerApi.Pipeline.Builder builder = pipeline.toBuilder();
    for (Map.Entry<String, RunnerApi.Environment> env :
        pipeline.getComponents().getEnvironmentsMap().entrySet()) {
      RunnerApi.Environment.Builder embedded = env.getValue().toBuilder().clearDependencies();
      for (RunnerApi.ArtifactInformation artifact : env.getValue().getDependenciesList()) {
        embedded.addDependencies(embedArtifact(artifact, jobName, jar));
      }
      builder.getComponentsBuilder().putEnvironments(env.getKey(), embedded.build());
    }
    return builder.build();
  }

  private static RunnerApi.ArtifactInformation embedArtifact(
      RunnerApi.ArtifactInformation artifact, String jobName, JarOutputStream jar)
      throws IOException {
    String path = PortablePipelineJarUtils.artifactPath(jobName, UUID.randomUUID().toString());
    jar.putNextEntry(new JarEntry(path));
    try (InputStream in = ArtifactRetrievalService.getArtifact(artifact)) {
      in.transferTo(jar);
    }
    jar.closeEntry();
    RunnerApi.ArtifactFilePayload onClasspath =
        RunnerApi.ArtifactFilePayload.newBuilder()
            .setPath(ClassLoaderFileSystem.SCHEMA + "://" + path)
            .build();
    return artifact.toBuilder()
        .setTypeUrn(ArtifactRetrievalService.FILE_ARTIFACT_URN)
        .setTypePayload(onClasspath.toByteString())
        .build();
  }

  private static void writeJson(JarOutputStream jar, String path, MessageOrBuilder message)
      throws IOException {
    writeText(jar, path, JsonFormat.printer().print(message));
  }

  private static void writeText(JarOutputStream jar, String path, String text) throws IOException {
    jar.putNextEntry(new JarEntry(path));
    jar.write(text.getBytes(StandardCharsets.UTF_8));
    jar.closeEntry();
  }

  /** The "job" of writing a jar is done once the jar is written. */
  private static class JarWrittenResult implements PortablePipelineResult {
    @Override
    public State getState() {
      return State.DONE;
    }

    @Override
    public State cancel() {
      return State.DONE;
    }

    @Override
    public State waitUntilFinish(Duration duration) {
      return State.DONE;
    }

    @Override
    public State waitUntilFinish() {
      return State.DONE;
    }

    @Override
    public MetricResults metrics() {
      throw new UnsupportedOperationException("Writing a pipeline jar has no metrics.");
    }

    @Override
    public JobApi.MetricResults portableMetrics() {
      return JobApi.MetricResults.getDefaultInstance();
    }
  }
}
